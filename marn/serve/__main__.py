from marn.serve.cli import main

main()
