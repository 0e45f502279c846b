from provisioning.standin.cli import main

raise SystemExit(main())
