"""Command-line tools (absl): the top layer, above everything else; never imported by it.

Each module here is one tool with a ``main(argv)`` and a ``run()`` entry point (the
console script of ``setup.py``); ``tools/<name>.py`` runs the same tool from a clone.
"""
