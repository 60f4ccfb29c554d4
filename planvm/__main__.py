from planvm.cli.main import main

main()
