"""Pieces of the `edge-semvc serve` service that need no pipeline: MQTT telemetry and remote
configuration (`telemetry`, settings in `config`), and systemd readiness and watchdog
notification (`notify`). They import only the standard library, paho-mqtt and `errors`."""
