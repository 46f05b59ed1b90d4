from openlam.cli import main

raise SystemExit(main())
