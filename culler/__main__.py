from culler.cli import main

raise SystemExit(main())
