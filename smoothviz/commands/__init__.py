"""CLI verbs, one module each.

Every module here defines ``NAME`` (the verb), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``smoothviz.cli`` discovers them, so adding a verb touches no other file.
"""
