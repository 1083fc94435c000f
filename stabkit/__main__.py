"""``python -m stabkit``: the command line, the same as the ``stabkit`` script."""

if __name__ == "__main__":
    from stabkit.cli.main import app

    app(prog_name="stabkit")
