"""How ss(8) names TCP states, beside the kernel names netstate.tcp reports.

Tests compare our facts with ss run in a lab namespace; they read ss's
output labels and build its state filters from these two tables.
"""

# `ss -tan` first column -> kernel state name
SS_LABEL_TO_STATE = {
    "ESTAB": "ESTABLISHED",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1",
    "FIN-WAIT-2": "FIN_WAIT2",
    "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN",
    "CLOSING": "CLOSING",
}

# kernel state name -> keyword of `ss state <keyword>`
STATE_TO_SS_FILTER = {
    "ESTABLISHED": "established",
    "SYN_SENT": "syn-sent",
    "SYN_RECV": "syn-recv",
    "FIN_WAIT1": "fin-wait-1",
    "FIN_WAIT2": "fin-wait-2",
    "TIME_WAIT": "time-wait",
    "CLOSE_WAIT": "close-wait",
    "LAST_ACK": "last-ack",
    "LISTEN": "listening",
    "CLOSING": "closing",
}
