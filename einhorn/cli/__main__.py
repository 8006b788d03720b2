from einhorn.cli import main

raise SystemExit(main())
