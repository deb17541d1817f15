"""The ``opd-dynamics`` command line (installed as the import package ``opd_dynamics_cli``)."""
