from planvm.cli import main

main()
