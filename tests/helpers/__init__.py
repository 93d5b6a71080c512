"""What the tests share: data sets, commands, trained runs, picture checks. Tests import these
modules, never each other (tests/test_structure.py checks); pytest puts tests/ on sys.path."""
