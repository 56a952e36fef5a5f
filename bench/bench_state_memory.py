"""Memory the Themis 1.x store keeps after a scan (tracemalloc, one process, no workers).

    python3 ../shared/tools/make_scale_store.py STORE --runs 50 --samples 1000 --metrics 3 --report none
    python bench/bench_state_memory.py STORE
"""
import gc, sys, tracemalloc
tracemalloc.start()
from themis_daemon.storage.themis1 import Store
s = Store(sys.argv[1]); s.scan_workers = 1
s.refresh(); gc.collect()
cur, peak = tracemalloc.get_traced_memory()
print(f"traced after scan: {cur/1e6:.1f} MB")
