"""Tests of cloud_trainer: datasets, training, export, packaging and publishing."""
