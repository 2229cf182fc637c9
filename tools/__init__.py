"""Development tools (not part of Being, not benchmarks): run from the checkout root as modules.

    python -m tools.figures ...           # the README's figures from a run folder
    python -m tools.gpu.carry RUN ...     # put together what a GPU box without network needs
    python -m tools.gpu.pack pack|unpack  # a prepared run folder in a few tens of MB
"""
