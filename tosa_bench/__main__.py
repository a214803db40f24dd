"""``python -m tosa_bench ...`` runs the ``tosa-bench`` command line, for a checkout used
without installing it (``PYTHONPATH=.``, e.g. on a borrowed GPU machine)."""

from tosa_bench.cli import app

if __name__ == "__main__":
    app()
