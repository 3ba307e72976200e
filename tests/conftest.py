"""Shared by every test directory; keep it tiny. (pyproject puts the repository on sys.path;
area fixtures live in each directory's own conftest.)"""
