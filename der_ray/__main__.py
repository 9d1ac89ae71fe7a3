"""``python -m der_ray`` runs the ``der-ray`` command line (see ``der_ray.cli``)."""

from der_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
