from kwire.cli.main import main

raise SystemExit(main())
