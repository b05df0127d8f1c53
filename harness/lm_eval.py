"""``python -m harness.lm_eval ARGS``: lm-eval's own command line with the ``deltamem`` model registered.

lm-eval 0.4 discovers no plug-ins, so a model defined outside its package exists only once imported. This
imports it and hands ``ARGS`` to lm-eval's CLI unchanged (``run``, ``ls``, ``validate`` and the legacy form
without a subcommand all work), e.g.::

    python -m harness.lm_eval --model deltamem --model_args adapter=shipped --tasks ifeval
"""
from __future__ import annotations


def main() -> None:
    import harness.lm_eval_model  # noqa: F401  registers "deltamem"
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
