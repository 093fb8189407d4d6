"""Tests of the device side (edge_agent): backends, decoders, bundles, the store and deploys,
MQTT, commands, the pipeline and the service's parts, the files a Pi installs."""
