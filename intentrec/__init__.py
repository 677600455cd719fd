"""IntentRec's Python API: ``from intentrec import IntentRec`` (the facade in ``intentrec.service``)."""

from intentrec.service import IntentRec, build_app, small_model_profile

__all__ = ["IntentRec", "build_app", "small_model_profile"]
