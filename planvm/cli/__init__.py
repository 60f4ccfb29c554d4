"""The command line: a lazy-loading click group (:mod:`planvm.cli.main`), one module per group of
commands, shared options (:mod:`planvm.cli.options`) and one error boundary
(:mod:`planvm.cli.common`). Commands call :class:`planvm.engine.Engine` and nothing below it."""
