"""Code that runs in the child process, next to the user's code, never in the server.

Every module here is stdlib-only and importable as a top-level module (`nextls_*` names), because it
runs in the user's interpreter, where nextls itself may not be installed: the runner puts this folder
on the child's path and nothing else of nextls.
"""
