"""The delivery program (``nanoclaw-delivery``): takes every row an agent writes to its
session's ``outbound.db`` to one final state (delivered, failed or denied) through the
destination ACL, the leak guard, the channels' outbound half and the system actions.
``service`` watches the sessions; ``engine.SessionWorker`` drives one session's rows
(``tracking`` reads them). docs/delivery.md is the contract."""
