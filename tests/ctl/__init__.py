"""Tests of edge-ctl, the operator's tool."""
