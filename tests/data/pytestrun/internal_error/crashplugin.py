"""A plugin (loaded with -p) whose hook raises: pytest ends with INTERNALERROR."""


def pytest_collection_modifyitems(items):
    raise RuntimeError("crashplugin broke collection on purpose")
