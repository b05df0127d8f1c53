"""MemGen (weaver SFT, trigger off) as a harness method: see :mod:`methods.memgen.model`."""
