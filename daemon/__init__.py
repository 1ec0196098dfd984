"""qnode.daemon: the node service (config, supervision, link layer, MQTT, metrics, CLI)."""
