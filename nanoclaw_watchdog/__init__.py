"""``nanoclaw-watchdog``: restarts a supervised program that hangs or grows too big.

A supervisord event listener (``[eventlistener:watchdog]`` in ``supervisord.conf``): at each
``TICK_5`` it reads every program's state from supervisord, its proof of life
(``nanoclaw_common.alive``) and its RSS, decides (``rules.decide``) and restarts through
supervisord's own XML-RPC interface. docs/internals.md, "Watchdog", has the rules.
"""
