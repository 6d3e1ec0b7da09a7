"""Helpers shared by bench.py and the scenarios (processes, servers, images, copies, fio)."""
