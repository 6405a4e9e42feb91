"""The command-line shell: one module per subcommand, no numerics. Nothing imports ``cli``."""
