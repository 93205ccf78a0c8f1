"""The Kaggle edge: the notebook's setup (``notebook``: inputs, short mode, presets from the hardware), the
upload bundle and its wheel checks (``bundle``, ``wheel_abi``, ``kaggle_install.sh``) and the notebook executed
locally (``dryrun``).

The top of the package: may import every other part; nothing imports it.
"""
