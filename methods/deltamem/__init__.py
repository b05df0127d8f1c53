"""δ-mem: an online r×r associative memory per attention layer, read and written while the model runs.

Public API (usable without the harness)::

    from methods.deltamem import DeltaMemConfig, attach, DeltaMem
    dm = attach(model, DeltaMemConfig.tsw())        # or DeltaMem.from_adapter(model, "adapter_dir")
    dm.reset(); model(history_ids)                   # write
    with dm.writes(False): model.generate(q_ids)     # read only

See ``methods/deltamem/README.md``.
"""
from methods.deltamem.config import DeltaMemConfig
from methods.deltamem.scan import scan, scan_naive, scan_numba
from methods.deltamem.state import OnlineState, Snapshot
from methods.deltamem.surgery import DeltaMem, UnsupportedArchitecture, attach, get_deltamem

__all__ = ["DeltaMemConfig", "DeltaMem", "OnlineState", "Snapshot", "UnsupportedArchitecture", "attach",
           "get_deltamem", "scan", "scan_naive", "scan_numba"]
