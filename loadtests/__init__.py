"""Locust load tests of the gateway (`loadtests/locustfile.py`, defaults in `loadtests/locust.conf`)."""
