"""EffOPD: extrapolate along the current update direction at powers of two (search, online, callback, replay)."""
from .online import EffOPD
from .extrapolation import SearchResult, extrapolated_names, search, search_model

__all__ = ["EffOPD", "SearchResult", "search", "search_model", "extrapolated_names", "EffOPDCallback", "replay"]


def __getattr__(name):  # keep `import opd_dynamics.effopd` light: transformers only when the callback is used
    if name == "EffOPDCallback":
        from .callback import EffOPDCallback
        return EffOPDCallback
    if name == "replay":
        from .replay import replay
        return replay
    raise AttributeError(name)
