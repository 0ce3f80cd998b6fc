from fastfeat.cli import main

raise SystemExit(main())
