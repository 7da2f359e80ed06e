"""Stored layouts, numpy only: how a table kind's arrays are laid out on a device, shared by the torch
tables (which write them) and the on-device runtime (which reads them).

* :mod:`pocketrec.formats.bitpack`: integer codes packed to ``ceil(log2 K)`` bits, int4 pairs;
* :mod:`pocketrec.formats.table_arrays`: checks and decoders of exported table arrays (a TT item order,
  int8 codebooks with their scales);
* :mod:`pocketrec.formats.elastic_arrays`: the elastic table's layout (bit-packed item groups and
  architecture, each group's kept blocks), its exact byte count and its decoder.

Imports run one way: ``tables/`` and ``device/`` import this package; it imports neither.
"""
