from sfd.cli import main

raise SystemExit(main())
