"""Example ``appliance.toml`` per board (``<board>.toml``): what ``scripts/install.sh --board``
installs and what ``provisioning fleet`` bundles start from. ``hw/*.toml`` link here."""
