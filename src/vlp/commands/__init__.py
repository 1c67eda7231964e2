"""One module per ``vlp`` subcommand; each defines ``register(subparsers)``.

Modules import heavy dependencies inside their ``run`` function so that
``vlp --help`` stays fast.
"""
