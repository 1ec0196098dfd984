"""The MQTT side: topics, the signed envelope, identities and HMAC keys, the inbound queue, the
client, the tag wire and the telemetry schema.
"""
