from autoinfer.cli import main

main()
