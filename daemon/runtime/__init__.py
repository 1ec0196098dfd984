"""What a running node stands on: config, SQLite state, instrument supervision, the driver factory,
systemd notification and the node context roles share.
"""
