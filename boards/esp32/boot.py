# ESP32 boot.py: runs before main.py at every reset. Joining Wi-Fi and setting the clock are done by main.py's run
# loop (firmware/azprov/link.py), which also re-joins when the access point goes away and re-syncs the clock.
import gc

gc.collect()
