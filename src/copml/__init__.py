"""copml: Continuous Operations for Production ML. A team's code meets ``copml.yaml``, the
CLI, the HTTP API and the few functions exported here."""

from copml.epochs import log_epoch

__all__ = ["log_epoch"]
