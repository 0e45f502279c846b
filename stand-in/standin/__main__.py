from standin.cli import main

raise SystemExit(main())
