"""What the tests share that is not a fixture (fixtures stay in the conftest.py files): paths
(:mod:`.paths`), waiting and free ports (:mod:`.net`), processes (:mod:`.procs`), dcmtk's tools
as peers (:mod:`.dcmtk`), the engine as a subprocess (:mod:`.engine`), the test RIS
(:mod:`.ris_peer`) and store rows (:mod:`.rows`). Imported as ``support.<module>``: pytest puts
``tests/`` on ``sys.path`` (the folder of the top conftest.py)."""
