"""themis-daemon: serve and watch Themis evaluation storage over HTTP and WebSocket."""

__version__ = "0.1.0"


def create_app(storage_path=".cache/experiments", **settings):
    """Build the Tornado application; imported lazily so storage/stats stay Tornado-free."""
    from .web.app import create_app as _create_app

    return _create_app(storage_path=storage_path, **settings)


__all__ = ["__version__", "create_app"]
