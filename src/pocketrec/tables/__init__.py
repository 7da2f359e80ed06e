"""Item tables: one module per kind, one interface (:class:`ItemTable`)."""

from pocketrec.tables.base import TABLE_KINDS, ItemTable, array_nbytes, register_table, table_from_export
from pocketrec.tables.codebook import CodebookTable
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.elastic import ElasticTable
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.tables.tt import TTTable

__all__ = ["TABLE_KINDS", "CodebookTable", "DenseTable", "ElasticTable", "ItemTable", "QuantizedTable", "TTTable",
           "array_nbytes", "register_table", "table_from_export"]
