"""The contract between the tuner (which writes lookup tables) and the runtime (which reads them): the table's
format (format.py), the selection rule (select.py), which table to read (find.py) and the GPU names tables are
keyed by (gpus.py). Below both: it imports only `kernels`."""
from tuning_table.find import TUNING_TABLE_ENV, find_table, load_named_table, open_table, shipped_table
from tuning_table.format import (Bucket, GenericBucket, LookupTable, load_table, parse_table, read_table_file,
                                 write_table)
from tuning_table.gpus import KNOWN_GPUS, check_gpu_arg, gpu_short_name, normalize_gpu_name
from tuning_table.select import FusionOptions, Launch, select_configs

__all__ = ["TUNING_TABLE_ENV", "find_table", "load_named_table", "open_table", "shipped_table", "Bucket",
           "GenericBucket", "LookupTable", "load_table", "parse_table", "read_table_file", "write_table", "KNOWN_GPUS",
           "check_gpu_arg", "gpu_short_name", "normalize_gpu_name", "FusionOptions", "Launch", "select_configs"]
